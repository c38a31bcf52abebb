"""Pure logic of `pgfanout compare`: which buckets differ, which rows differ in them, and the report.

Each side summarizes a table as buckets of rows (the key's hash picks the bucket): a row count and two
sums of the rows' hashes per bucket. Buckets that summarize alike hold the same rows (up to a hash
collision in both sums at once); only the rows of the other buckets are read again, in key order from
both sides, and merged here: a key on the primary only is missing on the replica, a key on the replica
only is extra, a key on both with other values is different, column by column.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

BucketSums = dict[int, tuple[int, int, int]]  # bucket -> (rows, sum of one hash, xor of another)


def differing_buckets(primary: BucketSums, replica: BucketSums) -> list[int]:
    """Buckets summarized otherwise on the two sides (a bucket present on one side only included)."""
    return sorted(b for b in primary.keys() | replica.keys() if primary.get(b) != replica.get(b))


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
    buckets: int = 0
    differing_buckets: int = 0
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
            return [f"{self.table}: equal ({self.rows_primary} rows in the share, {self.buckets} buckets)"]
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
            "buckets": self.buckets,
            "differing_buckets": self.differing_buckets,
            "counts": self.counts,
            "columns": self.columns,
            "examples": [
                {"kind": d.kind, "key": dict(zip(key_columns, map(str, d.key), strict=True)), "columns": list(d.columns)}
                for d in self.examples
            ],
        }
