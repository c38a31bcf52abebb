"""Pure logic of `pgfanout compare`: key ranges, the merge of two key-ordered row streams, the report.

Each side sums a range of keys in SQL (a row count and the xor of a 64-bit hash of each row's text).
Ranges summed alike hold the same rows (but for a 2^-64 chance); a range that differs is cut into
smaller ranges, and those that differ again, down to a few thousand rows, are read in key order from
both sides and merged here: a key on the primary only is missing on the replica, a key on the replica
only is extra, a key on both with other values is different, column by column.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

KeyRange = tuple[str | None, str | None]  # [low, high) of the first key column, as text; None: unbounded
ROWS_PER_RANGE = 50_000  # rows a top-level range holds, about
MAX_RANGES = 10_000
SAMPLED_PAGES_PER_RANGE = 4  # pages the bounds are sampled from, per range
SPLIT = 32  # sub-ranges a differing range is cut into
LEAF_ROWS = 2_000  # a differing range this small is read row by row


def range_count(estimated_rows: int) -> int:
    """How many top-level ranges a table of about ``estimated_rows`` rows is cut into."""
    return max(1, min(MAX_RANGES, math.ceil(estimated_rows / ROWS_PER_RANGE)))


def fractions(parts: int) -> list[float]:
    """The inner cut points of ``parts`` equal parts, as fractions."""
    return [i / parts for i in range(1, parts)]


def sample_percent(pages: int, ranges: int) -> float:
    """The share of a table's pages (in percent) to sample the top-level bounds from."""
    return min(100.0, 100.0 * SAMPLED_PAGES_PER_RANGE * ranges / max(pages, 1))


def ranges_between(bounds: Iterable[str | None], low: str | None = None, high: str | None = None) -> list[KeyRange]:
    """Consecutive ranges from ``low`` to ``high`` cut at ``bounds`` (ascending in the key's order, as
    percentiles come): repeated bounds, and a bound equal to ``low``, cut nothing."""
    cuts: list[str] = []
    for bound in bounds:
        if bound is not None and bound != low and (not cuts or bound != cuts[-1]):
            cuts.append(bound)
    edges = [low, *cuts, high]
    return list(zip(edges, edges[1:], strict=False))


class Row(NamedTuple):
    key: tuple[Any, ...]  # the key's values, as the sort order of both sides sees them
    values: tuple[str | None, ...]  # every compared column's text


class Difference(NamedTuple):
    kind: str  # missing (on the replica), extra (on the replica), different
    key: tuple[Any, ...]
    columns: tuple[str, ...]  # the columns that differ (different only)
    primary: tuple[str | None, ...] | None  # the primary's row (missing, different)


def merge(primary: Iterable[Row], replica: Iterable[Row], columns: Sequence[str]) -> Iterator[Difference]:
    """The differences of two row streams sorted by key alike."""
    left, right = iter(primary), iter(replica)
    a, b = next(left, None), next(right, None)
    while a is not None or b is not None:
        if b is None or (a is not None and _before(a.key, b.key)):
            yield Difference("missing", a.key, (), a.values)  # type: ignore[union-attr]
            a = next(left, None)
        elif a is None or _before(b.key, a.key):
            yield Difference("extra", b.key, (), None)
            b = next(right, None)
        else:
            if a.values != b.values:
                changed = tuple(c for c, x, y in zip(columns, a.values, b.values, strict=True) if x != y)
                yield Difference("different", a.key, changed, a.values)
            a, b = next(left, None), next(right, None)


def _before(x: tuple[Any, ...], y: tuple[Any, ...]) -> bool:
    """Key order as both servers sort them; a NULL never occurs in a key."""
    return x < y


@dataclass
class TableReport:
    table: str
    rows_primary: int = 0
    rows_replica: int = 0
    ranges: int = 0  # top-level key ranges
    differing_ranges: int = 0
    whole: bool = False  # read whole, not by key ranges (the key's collation differs between the servers)
    counts: dict[str, int] = field(default_factory=lambda: {"missing": 0, "extra": 0, "different": 0})
    examples: list[Difference] = field(default_factory=list)  # the first ones of each kind
    columns: dict[str, int] = field(default_factory=dict)  # differing rows per column

    @property
    def equal(self) -> bool:
        return not any(self.counts.values())

    def add(self, difference: Difference, keep: int) -> None:
        self.counts[difference.kind] += 1
        if self.counts[difference.kind] <= keep:
            self.examples.append(difference)
        for column in difference.columns:
            self.columns[column] = self.columns.get(column, 0) + 1

    def lines(self, key_columns: Sequence[str]) -> list[str]:
        if self.equal:
            read = "read whole" if self.whole else f"{self.ranges} key ranges"
            return [f"{self.table}: equal ({self.rows_primary} rows in the share, {read})"]
        counts = ", ".join(f"{n} {kind}" for kind, n in self.counts.items() if n)
        out = [f"{self.table}: DIFFERENT: {counts} (primary {self.rows_primary} rows, replica {self.rows_replica})"]
        if self.columns:
            out.append("  columns that differ: " + ", ".join(f"{c} ({n})" for c, n in sorted(self.columns.items())))
        for d in self.examples:
            key = ", ".join(f"{c}={v}" for c, v in zip(key_columns, d.key, strict=True))
            detail = f" in {', '.join(d.columns)}" if d.columns else ""
            out.append(f"  {d.kind} ({key}){detail}")
        return out

    def as_json(self, key_columns: Sequence[str]) -> dict[str, Any]:
        return {
            "table": self.table,
            "equal": self.equal,
            "rows_primary": self.rows_primary,
            "rows_replica": self.rows_replica,
            "ranges": self.ranges,
            "differing_ranges": self.differing_ranges,
            "read_whole": self.whole,
            "counts": self.counts,
            "columns": self.columns,
            "examples": [
                {"kind": d.kind, "key": dict(zip(key_columns, map(str, d.key), strict=True)), "columns": list(d.columns)}
                for d in self.examples
            ],
        }
