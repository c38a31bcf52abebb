"""`pgfanout compare` and `pgfanout repair`: a replica against its share of the primary, both read at one
stream position, while writers and the pipeline go on.

The two sides at one position (docs/compare.md): the compare opens a REPEATABLE READ transaction on the
primary and asks the agent to take its next tick with that very snapshot (pgfanout.snapshot_request);
the agent does so only if the snapshot is later than its last tick, so the tick order stays a valid
one. A tick's batch is every transaction visible in its snapshot and not in the one before: once a
replica has applied that batch to its end, it holds exactly what the snapshot sees. The agent names the
subscriber in the batch's last message (or a heartbeat), and the subscriber, there, commits, exports a
snapshot of its replica (pg_export_snapshot) and waits an instant until the compare has imported it.
Both sides are then read in their snapshots, as long as the compare needs, without holding anyone.

Reading: each side sums its rows in buckets in one scan (subscriber.checksums); buckets that differ
are read again in key order from both sides and merged (subscriber.diff). Memory holds the bucket
sums and the rows of one merge step, whatever the table's size.

Repair: after a compare, the subscriber is asked to stop at the end of another such tick and to wait
there; the rows that differed are read again on both sides, there, and the replica's are made equal
to the primary's in one replica transaction, as the applier, with the subscriber's resync lock held;
then the subscriber goes on, exactly after that position.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pgfanout.core.config import Config
from pgfanout.core.errors import CompareError
from pgfanout.core.names import parse_table, qualified
from pgfanout.runtime.pg import connect
from subscriber import checksums
from subscriber.diff import BucketSums, Difference, Row, TableReport, differing_buckets, merge
from subscriber.exporter import compare_application_name
from subscriber.state import resync_lock_key

log = logging.getLogger(__name__)
POLL_SECONDS = 0.005
TICK_ATTEMPTS = 5
MAX_REPAIR_KEYS = 100_000
FETCH_ROWS = 2_000
_cursor_numbers = itertools.count()


@dataclass(frozen=True)
class Target:
    """A table as the subscriber's route carries it."""

    schema_name: str
    table_name: str
    keys: tuple[str, ...]
    columns: tuple[str, ...]  # compared: the share's columns the replica has, in the primary's order
    filters: tuple[str, ...]  # the route's row filters through every tier, as SQL (the primary's side only)

    @property
    def name(self) -> str:
        return qualified(self.schema_name, self.table_name)

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema_name, self.table_name)


@dataclass
class Comparison:
    reports: list[TableReport]
    position: int  # the stream position both sides were read at
    differences: dict[str, list[Difference]]  # per table (at most MAX_REPAIR_KEYS each)


@dataclass
class Aligned:
    """Both sides open in snapshots of one stream position."""

    primary: psycopg.Connection  # in a REPEATABLE READ transaction: the tick's snapshot
    replica: psycopg.Connection  # in a REPEATABLE READ transaction: the replica at the end of that tick
    tick_id: int
    position: int


# -- the tables ---------------------------------------------------------------------


def targets(config: Config, subscriber: str, tables: list[str] | None) -> list[Target]:
    """What a subscriber's route carries of each (named) table; refuses what it does not carry."""
    if subscriber not in config.subscribers:
        raise CompareError(f"no subscriber named {subscriber!r} in the configuration (it has {', '.join(config.subscribers)})")
    settings = config.subscribers[subscriber]
    source = config.origin_source(settings.route)
    share = config.share_of(settings.route)
    name = compare_application_name(subscriber)
    with connect(config.sources[source], name) as primary, connect(settings, name) as replica:
        layouts = {
            qualified(s, t): (s, t, cols, keys)
            for s, t, cols, keys in primary.execute(
                "SELECT DISTINCT ON (schema_name, table_name) schema_name, table_name, columns, key_columns "
                "FROM pgfanout.tables WHERE schema_name <> 'pgfanout' ORDER BY schema_name, table_name, table_id DESC"
            )
        }
        carried = sorted(layouts if share is None else set(share) & set(layouts))
        wanted = [qualified(*parse_table(t)) for t in tables] if tables else carried
        unknown = [t for t in wanted if t not in carried]
        if unknown:
            raise CompareError("; ".join(_not_carried(primary, subscriber, t, carried) for t in unknown))
        found = []
        for name in wanted:
            schema_name, table_name, columns, keys = layouts[name]
            kept, filters = (None, []) if share is None else share[name]
            present = {
                r[0]
                for r in replica.execute(
                    "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
                    (name,),
                )
            }
            if not present:
                raise CompareError(
                    f"table {name} does not exist on subscriber {subscriber}; run `pgfanout subscriber init {subscriber}`"
                )
            if not keys or any(k not in present for k in keys):
                raise CompareError(f"table {name}: no key to compare rows by on subscriber {subscriber}")
            compared = tuple(c for c in columns if (kept is None or c in kept) and c in present)
            found.append(Target(schema_name, table_name, tuple(keys), compared, tuple(f.sql() for f in filters)))
        return found


def _not_carried(primary: psycopg.Connection, subscriber: str, table: str, carried: list[str]) -> str:
    """Why a table named on the command line cannot be compared."""
    keyed = primary.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = c.oid AND indisprimary) FROM pg_class c "
        "WHERE c.oid = to_regclass(%s)",
        (table,),
    ).fetchone()
    if keyed is None:
        return f"there is no table {table} on the primary"
    if not keyed[0]:
        return f"table {table} has no primary key: pgfanout does not publish it, and a compare has no key to match rows by"
    return f"subscriber {subscriber} does not receive table {table} (it receives {', '.join(carried) or 'nothing'})"


# -- one stream position on both sides ----------------------------------------------


@contextmanager
def aligned(config: Config, subscriber: str, timeout: float, hold: bool = False) -> Iterator[Aligned]:
    """Both sides in snapshots of the end of one tick (see the module's docstring). With ``hold``, the
    subscriber waits there until release() (for a repair)."""
    settings = config.subscribers[subscriber]
    source = config.origin_source(settings.route)
    name = compare_application_name(subscriber)
    with ExitStack() as stack:
        replica_control = stack.enter_context(connect(settings, name))  # before asking: the subscriber looks for it
        replica = stack.enter_context(connect(settings, name))
        control = stack.enter_context(connect(config.sources[source], name))
        primary, tick_id = _primary_at_a_tick(config, source, subscriber, control, hold, timeout, stack)
        exported, position = _wait_for_export(replica_control, control, subscriber, tick_id, timeout)
        replica.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        replica.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(exported)))
        replica_control.execute(
            "UPDATE pgfanout_replica.snapshot_request SET imported = true WHERE subscriber = %s AND tick_id = %s",
            (subscriber, tick_id),
        )
        log.info("compare: primary and subscriber %s at the end of tick %d (position %d)", subscriber, tick_id, position)
        try:
            yield Aligned(primary, replica, tick_id, position)
        finally:
            for conn in (primary, replica):
                if not conn.closed:
                    conn.rollback()


def _primary_at_a_tick(
    config: Config, source: str, subscriber: str, control: psycopg.Connection, hold: bool, timeout: float, stack: ExitStack
) -> tuple[psycopg.Connection, int]:
    """A primary connection in a REPEATABLE READ snapshot that the agent took as a tick's; the tick."""
    deadline = time.monotonic() + timeout
    for _attempt in range(TICK_ATTEMPTS):
        primary = stack.enter_context(connect(config.sources[source], compare_application_name(subscriber)))
        primary.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = primary.execute("SELECT pg_current_snapshot()::text").fetchone()[0]
        request = control.execute(
            "INSERT INTO pgfanout.snapshot_request (subscriber, snapshot, hold) VALUES (%s, %s, %s) RETURNING request_id",
            (subscriber, snapshot, hold),
        ).fetchone()[0]
        while True:
            tick_id, refused = control.execute(
                "SELECT tick_id, refused FROM pgfanout.snapshot_request WHERE request_id = %s", (request,)
            ).fetchone()
            if tick_id is not None:
                return primary, tick_id
            if refused is not None:
                log.info("compare: the agent ticked after this snapshot was taken; taking another")
                primary.close()
                break
            if time.monotonic() > deadline:
                control.execute("DELETE FROM pgfanout.snapshot_request WHERE request_id = %s", (request,))
                raise CompareError(
                    f"the agent of source {source} took no tick within {timeout:g}s; is it running? (pgfanout status)"
                )
            time.sleep(POLL_SECONDS)
    raise CompareError(f"the agent of source {source} ticked after each of {TICK_ATTEMPTS} snapshots; run the compare again")


def _wait_for_export(
    replica: psycopg.Connection, primary: psycopg.Connection, subscriber: str, tick_id: int, timeout: float
) -> tuple[str, int]:
    """The replica snapshot the subscriber exported at the end of the tick, and its position."""
    deadline = time.monotonic() + timeout
    while True:
        row = (
            replica.execute(
                "SELECT exported, position FROM pgfanout_replica.snapshot_request WHERE subscriber = %s AND tick_id = %s",
                (subscriber, tick_id),
            ).fetchone()
            if _has_state(replica)
            else None
        )
        if row is not None:
            return row[0], row[1]
        if time.monotonic() > deadline:
            published = primary.execute("SELECT next_position - 1 FROM pgfanout.agent_state").fetchone()[0]
            applied = (
                replica.execute("SELECT position FROM pgfanout_replica.position WHERE subscriber = %s", (subscriber,)).fetchone()
                if _has_state(replica)
                else None
            )
            at = applied[0] if applied else 0
            raise CompareError(
                f"subscriber {subscriber} did not reach the compare's position within {timeout:g}s: "
                f"it is at position {at}, {max(0, published - at)} transactions behind its source "
                f"(published up to {published}); is it running (pgfanout status)? Let it catch up, or give --timeout more"
            )
        time.sleep(POLL_SECONDS * 4)


def _has_state(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT to_regclass('pgfanout_replica.snapshot_request') IS NOT NULL").fetchone()[0]


def release(config: Config, subscriber: str, tick_id: int) -> None:
    with connect(config.subscribers[subscriber], compare_application_name(subscriber)) as conn:
        conn.execute(
            "UPDATE pgfanout_replica.snapshot_request SET imported = true, released = true "
            "WHERE subscriber = %s AND tick_id = %s",
            (subscriber, tick_id),
        )


# -- comparing ----------------------------------------------------------------------


def _both(primary: Callable[[], Any], replica: Callable[[], Any]) -> tuple[Any, Any]:
    """Run the two sides' queries at once (each on its own connection)."""
    results: dict[str, Any] = {}

    def run(side: str, call: Callable[[], Any]) -> None:
        try:
            results[side] = call()
        except BaseException as exc:  # re-raised below, in the caller's thread
            results[side + " error"] = exc

    thread = threading.Thread(target=run, args=("replica", replica))
    thread.start()
    run("primary", primary)
    thread.join()
    for side in ("primary", "replica"):
        if side + " error" in results:
            raise results[side + " error"]
    return results["primary"], results["replica"]


def _summary(conn: psycopg.Connection, target: Target, buckets: int, filters: tuple[str, ...]) -> BucketSums:
    query = checksums.summary(target.identifier, target.keys, target.columns, filters, buckets)
    return {b: (n, s, x) for b, n, s, x in conn.execute(query)}


def _rows(conn: psycopg.Connection, query: sql.Composable, params: dict, keys: int) -> Iterator[Row]:
    """Rows through a server-side cursor: memory holds FETCH_ROWS of them, whatever the buckets hold."""
    with conn.cursor(name=f"pgfanout_compare_{next(_cursor_numbers)}") as cur:
        cur.itersize = FETCH_ROWS
        cur.execute(query, params)
        for row in cur:
            yield Row(tuple(row[:keys]), tuple(row[keys:]))


def compare_table(
    sides: Aligned, target: Target, examples: int, keep: bool = False, progress: Callable[[int], None] | None = None
) -> tuple[TableReport, list[Difference]]:
    """The report of one table, and with ``keep`` its differences (at most MAX_REPAIR_KEYS, for a repair).
    The primary's side is cut to the route's rows by its filters; the replica's is read whole: a row the
    filters exclude is extra there."""
    report = TableReport(target.name)
    estimated = sides.primary.execute(
        "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = to_regclass(%s)", (target.name,)
    ).fetchone()[0]
    report.buckets = buckets = checksums.bucket_count(estimated)
    primary, replica = _both(
        lambda: _summary(sides.primary, target, buckets, target.filters), lambda: _summary(sides.replica, target, buckets, ())
    )
    report.rows_primary = sum(v[0] for v in primary.values())
    report.rows_replica = sum(v[0] for v in replica.values())
    if progress:
        progress(1)
    differing = differing_buckets(primary, replica)
    report.differing_buckets = len(differing)
    kept: list[Difference] = []
    if differing:
        params = {"buckets": differing}
        for difference in merge(
            _rows(
                sides.primary,
                checksums.rows(target.identifier, target.keys, target.columns, target.filters, buckets),
                params,
                len(target.keys),
            ),
            _rows(
                sides.replica,
                checksums.rows(target.identifier, target.keys, target.columns, (), buckets),
                params,
                len(target.keys),
            ),
            target.columns,
        ):
            report.add(difference, examples)
            if keep and len(kept) < MAX_REPAIR_KEYS:
                kept.append(difference)
    if progress:
        progress(1)
    return report, kept


def compare(
    config: Config,
    subscriber: str,
    found: list[Target],
    timeout: float,
    examples: int,
    progress: Callable[[str, int], None] | None = None,
    keep: bool = False,
) -> Comparison:
    """Each target table of the subscriber against its share of the primary, both at one stream position;
    with ``keep``, the differences too (for a repair)."""
    result = Comparison([], 0, {})
    with aligned(config, subscriber, timeout) as sides:
        result.position = sides.position
        for target in found:
            step = (lambda n, t=target.name: progress(t, n)) if progress else None
            report, kept = compare_table(sides, target, examples, keep, step)
            result.reports.append(report)
            result.differences[target.name] = kept
    return result


# -- repairing ----------------------------------------------------------------------


def repair(
    config: Config, subscriber: str, found: list[Target], differences: dict[str, list[Difference]], timeout: float
) -> dict[str, int]:
    """Make the rows that differed equal to the primary's, at a position where the subscriber waits; per table,
    how many rows were changed."""
    wanted = {t.name: t for t in found if differences.get(t.name)}
    if not wanted:
        return {}
    changed: dict[str, int] = {}
    settings = config.subscribers[subscriber]
    with aligned(config, subscriber, timeout, hold=True) as sides:
        try:
            with connect(settings, compare_application_name(subscriber)) as writer:
                writer.autocommit = False
                writer.execute("SET session_replication_role = replica")  # as the applier: past the deny triggers
                writer.execute("SELECT pg_advisory_xact_lock(%s, %s)", resync_lock_key(subscriber))
                at = writer.execute(
                    "SELECT position FROM pgfanout_replica.position WHERE subscriber = %s", (subscriber,)
                ).fetchone()[0]
                if at != sides.position:
                    raise CompareError(
                        f"subscriber {subscriber} went on from position {sides.position} (now {at}) "
                        "before the repair could be made; nothing was changed, run it again"
                    )
                for name, target in wanted.items():
                    changed[name] = _repair_table(sides.primary, writer, target, differences[name])
                writer.execute(
                    "INSERT INTO pgfanout_replica.repaired (subscriber, table_name, position, rows) "
                    "SELECT %s, t, %s, n FROM unnest(%s::text[], %s::bigint[]) r(t, n)",
                    (subscriber, at, list(changed), list(changed.values())),
                )
                writer.commit()
                log.warning(
                    "subscriber %s: repaired at position %d: %s",
                    subscriber,
                    at,
                    ", ".join(f"{t} ({n} rows)" for t, n in changed.items()),
                )
        finally:
            release(config, subscriber, sides.tick_id)
    return changed


def _repair_table(primary: psycopg.Connection, writer: psycopg.Connection, target: Target, differences: list[Difference]) -> int:
    """The keys that differed, read again on both sides at the repair's position; the replica's rows made equal
    to the primary's share (a key that no longer differs is left alone). How many rows were changed."""
    keys = json.dumps([list(d.key) for d in differences])
    width = len(target.keys)
    primary_rows = [
        Row(tuple(r[:width]), tuple(r[width:]))
        for r in primary.execute(
            checksums.keyed_rows(target.identifier, target.keys, target.columns, target.filters), {"keys": keys}
        )
    ]
    replica_rows = [
        Row(tuple(r[:width]), tuple(r[width:]))
        for r in writer.execute(checksums.keyed_rows(target.identifier, target.keys, target.columns, ()), {"keys": keys})
    ]
    # values travel as text of unknown type: the server reads them as the column's type, as the applier does
    key_match = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in target.keys)
    insert = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        target.identifier,
        sql.SQL(", ").join(map(sql.Identifier, target.columns)),
        sql.SQL(", ").join(sql.Placeholder() * len(target.columns)),
    )
    count = 0
    for difference in merge(primary_rows, replica_rows, target.columns):
        if difference.kind == "extra":
            writer.execute(sql.SQL("DELETE FROM {} WHERE {}").format(target.identifier, key_match), difference.key)
        elif difference.kind == "missing":
            writer.execute(insert, difference.primary)
        else:
            changed = [(c, v) for c, v in zip(target.columns, difference.primary or (), strict=True) if c in difference.columns]
            writer.execute(
                sql.SQL("UPDATE {} SET {} WHERE {}").format(
                    target.identifier,
                    sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c, _ in changed),
                    key_match,
                ),
                [*(v for _, v in changed), *difference.key],
            )
        count += 1
    return count
