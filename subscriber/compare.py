"""`pgfanout compare`: a replica against its share of the primary, each key range read on both sides at
one stream position (subscriber.alignment), while writers and the pipeline go on.

A table is cut into ranges of its first key column (bounds sampled from the primary, about 50,000 rows
each); each side sums a range in SQL, and a range that differs is cut again, down to ranges small
enough to read row by row and merge (subscriber.diff). The reading goes in segments: both sides are
aligned at a position, read for at most SEGMENT_SECONDS, and let go, so that no snapshot lives long on
the primary (a long one would keep VACUUM from cleaning hot rows, which slows their writers), and
--pace pauses between segments. Memory holds one fetch of rows, whatever the table's size.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pgfanout.core.config import Config
from pgfanout.core.errors import CompareError
from pgfanout.core.names import parse_table, qualified
from pgfanout.runtime.pg import connect
from pgfanout.runtime.primaries import current_primary
from subscriber import checksums
from subscriber.alignment import Aligned, Aligner
from subscriber.ddl import PUBLISHED_TABLES
from subscriber.diff import (
    LEAF_ROWS,
    SPLIT,
    Difference,
    KeyRange,
    Row,
    TableReport,
    fractions,
    merge,
    range_count,
    ranges_between,
    sample_percent,
)
from subscriber.exporter import compare_application_name

log = logging.getLogger(__name__)
MAX_REPAIR_KEYS = 100_000
FETCH_ROWS = 2_000
SEGMENT_SECONDS = 1.0  # how long both sides stay at one position (and a snapshot stays open)
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
    positions: list[int] = field(default_factory=list)  # the stream positions both sides were read at, in order
    differences: dict[str, list[Difference]] = field(default_factory=dict)  # per table, at most MAX_REPAIR_KEYS


# -- the tables ---------------------------------------------------------------------


def targets(config: Config, subscriber: str, tables: list[str] | None) -> list[Target]:
    """What a subscriber's route carries of each (named) table; refuses what it does not carry."""
    if subscriber not in config.subscribers:
        raise CompareError(f"no subscriber named {subscriber!r} in the configuration (it has {', '.join(config.subscribers)})")
    settings = config.subscribers[subscriber]
    source = config.origin_source(settings.route)
    share = config.share_of(settings.route)
    name = compare_application_name(subscriber)
    with connect(current_primary(config, source)[1], name) as primary, connect(settings, name) as replica:
        layouts = {qualified(s, t): (s, t, cols, keys) for s, t, cols, keys in primary.execute(PUBLISHED_TABLES)}
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


# -- segments -----------------------------------------------------------------------


class Segments:
    """Both sides at one position for SEGMENT_SECONDS at most, then at a later one; with ``pace`` below 1,
    a pause between segments so that the compare works that fraction of the time."""

    def __init__(self, aligner: Aligner, pace: float):
        self.aligner, self.pace = aligner, pace
        self.current: Aligned | None = None
        self.began = 0.0
        self.positions: list[int] = []

    def sides(self) -> Aligned:
        """Both sides, aligned again if the segment is over."""
        if self.current is not None and time.monotonic() - self.began < SEGMENT_SECONDS:
            return self.current
        if self.current is not None:
            worked = time.monotonic() - self.began
            self.end()
            if self.pace < 1:
                time.sleep(worked * (1 / self.pace - 1))
        self.current = self.aligner.align()
        self.began = time.monotonic()
        self.positions.append(self.current.position)
        return self.current

    def end(self) -> None:
        if self.current is not None:
            self.aligner.end()
            self.current = None


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


def _rows(conn: psycopg.Connection, query: sql.Composable, keys: int) -> Iterator[Row]:
    """Rows through a server-side cursor: memory holds FETCH_ROWS of them, whatever the range holds."""
    with conn.cursor(name=f"pgfanout_compare_{next(_cursor_numbers)}") as cur:
        cur.itersize = FETCH_ROWS
        cur.execute(query)
        for row in cur:
            yield Row(tuple(row[:keys]), tuple(row[keys:]))


class TableCompare:
    """One table: its top-level ranges, each summed on both sides and cut again where they differ."""

    def __init__(self, segments: Segments, target: Target, examples: int, keep: bool, whole: bool):
        self.segments, self.target, self.examples, self.keep = segments, target, examples, keep
        self.report = TableReport(target.name, whole=whole)
        self.kept: list[Difference] = []
        self.key = target.keys[0]

    def top_ranges(self, sides: Aligned) -> list[KeyRange]:
        if self.report.whole:
            return [(None, None)]
        estimated, pages = sides.primary.execute(
            "SELECT greatest(reltuples, 0)::bigint, relpages FROM pg_class WHERE oid = to_regclass(%s)", (self.target.name,)
        ).fetchone()
        count = range_count(estimated)
        if count == 1:
            return [(None, None)]
        bounds = sides.primary.execute(
            checksums.sampled_bounds(self.target.identifier, self.key),
            {"fractions": fractions(count), "percent": sample_percent(pages, count)},
        ).fetchone()[0]
        return ranges_between(bounds or [])

    def run(self, progress: Callable[[int], None] | None) -> None:
        top = self.top_ranges(self.segments.sides())
        self.report.ranges = len(top)
        for bounds in top:
            sides = self.segments.sides()
            primary, replica = self._checksums(sides, bounds)
            self.report.rows_primary += primary[0]
            self.report.rows_replica += replica[0]
            if primary != replica:
                self.report.differing_ranges += 1
                self._drill(sides, bounds, primary[0], replica[0])
            if progress:
                progress(primary[0])

    def _checksums(self, sides: Aligned, bounds: KeyRange) -> tuple[tuple[int, int], tuple[int, int]]:
        """The range's (rows, xor) on each side: the primary's cut to the route's rows, the replica's whole."""
        t = self.target
        return _both(
            lambda: sides.primary.execute(checksums.checksum(t.identifier, self.key, t.columns, t.filters, bounds)).fetchone(),
            lambda: sides.replica.execute(checksums.checksum(t.identifier, self.key, t.columns, (), bounds)).fetchone(),
        )

    def _drill(self, sides: Aligned, bounds: KeyRange, primary_rows: int, replica_rows: int) -> None:
        """A range that differs: cut into SPLIT ranges by the primary's keys and each compared, or, small
        (or uncuttable) as it is, read row by row."""
        if max(primary_rows, replica_rows) > LEAF_ROWS and not self.report.whole:
            cuts = sides.primary.execute(
                checksums.bounds_within(self.target.identifier, self.key, bounds), {"fractions": fractions(SPLIT)}
            ).fetchone()[0]
            parts = ranges_between(cuts or [], *bounds)
            if len(parts) > 1:
                for part in parts:
                    primary, replica = self._checksums(sides, part)
                    if primary != replica:
                        self._drill(sides, part, primary[0], replica[0])
                return
        t = self.target
        for difference in merge(
            _rows(sides.primary, checksums.rows(t.identifier, t.keys, t.columns, t.filters, bounds), len(t.keys)),
            _rows(sides.replica, checksums.rows(t.identifier, t.keys, t.columns, (), bounds), len(t.keys)),
            t.columns,
        ):
            self.report.add(difference, self.examples)
            if self.keep and len(self.kept) < MAX_REPAIR_KEYS:
                self.kept.append(difference)


def _collations_agree(aligner: Aligner, target: Target) -> bool:
    """Whether the first key column sorts alike on both servers (key ranges are cut by one, read by the other)."""
    args = (target.name, target.keys[0])
    ours = aligner.primary.execute(checksums.KEY_COLLATION, args).fetchone()[0]
    theirs = aligner.replica.execute(checksums.KEY_COLLATION, args).fetchone()[0]
    if ours != theirs:
        log.warning(
            "compare: %s: its key %s sorts by %s on the primary and by %s on the replica; read whole, in one snapshot",
            target.name,
            target.keys[0],
            ours,
            theirs,
        )
    return ours == theirs


def compare(
    config: Config,
    subscriber: str,
    found: list[Target],
    timeout: float,
    examples: int,
    progress: Callable[[str, int], None] | None = None,
    keep: bool = False,
    pace: float = 1.0,
) -> Comparison:
    """Each target table of the subscriber against its share of the primary, each range at one position;
    with ``keep``, the differences too (for a repair)."""
    result = Comparison([])
    with Aligner(config, subscriber, timeout) as aligner:
        whole = {t.name: not _collations_agree(aligner, t) for t in found}  # before any segment's snapshot
        segments = Segments(aligner, pace)
        try:
            for target in found:
                table = TableCompare(segments, target, examples, keep, whole[target.name])
                table.run((lambda n, t=target.name: progress(t, n)) if progress else None)
                result.reports.append(table.report)
                result.differences[target.name] = table.kept
        finally:
            segments.end()
        result.positions = segments.positions
    return result


def estimated_rows(config: Config, subscriber: str, found: list[Target]) -> int:
    """The primary's estimate of the rows of the tables (the progress bar's measure)."""
    source = current_primary(config, config.origin_source(config.subscribers[subscriber].route))[1]
    with connect(source, compare_application_name(subscriber)) as conn:
        return int(
            conn.execute(
                "SELECT coalesce(sum(greatest(reltuples, 0)), 0) FROM pg_class WHERE oid = ANY (%s::regclass[])",
                ([t.name for t in found],),
            ).fetchone()[0]
        )
