"""Progress of a copy: a bar per table on a terminal (tqdm), plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TextIO

from tqdm import tqdm

if TYPE_CHECKING:
    from subscriber.ddl import TableDefinition

log = logging.getLogger(__name__)
LOG_EVERY_SECONDS = 5.0


class CopyProgress:
    def __init__(self, stream: TextIO | None = None, bar: bool | None = None):
        self.stream = stream or sys.stderr
        self.bar = self.stream.isatty() if bar is None else bar
        self.tables: list[tuple[str, int, int, float]] = []  # (table, rows, bytes, seconds) copied

    @contextmanager
    def table(self, definition: TableDefinition) -> Iterator[Callable[[int], None]]:
        """Yields ``report(rows, nbytes)``, to be called as rows are copied."""
        name = definition.qualified
        started = last_log = time.monotonic()
        rows = nbytes = shown = 0
        total = definition.estimated_rows or None
        bar = (
            tqdm(total=total, desc=name, unit="row", unit_scale=True, file=self.stream, leave=True, dynamic_ncols=True)
            if self.bar
            else None
        )

        def report(copied_rows: int, size: int) -> None:
            nonlocal rows, nbytes, shown, last_log
            rows += copied_rows
            nbytes += size
            now = time.monotonic()
            if bar is not None:
                bar.update(rows - shown)
                bar.set_postfix_str(f"{nbytes / 1e6 / max(now - started, 1e-6):.1f} MB/s", refresh=False)
            elif now - last_log >= LOG_EVERY_SECONDS:
                last_log = now
                log.info(
                    "copying %s: %d rows%s, %.1f MB, %.1f MB/s%s",
                    name,
                    rows,
                    f" of ~{total}" if total else "",
                    nbytes / 1e6,
                    nbytes / 1e6 / (now - started),
                    _eta(rows, total, now - started),
                )
            shown = rows

        try:
            yield report
        finally:
            seconds = time.monotonic() - started
            if bar is not None:
                bar.update(rows - shown)
                bar.close()
        self.tables.append((name, rows, nbytes, seconds))
        log.info(
            "copied %s: %d rows, %.1f MB in %.1f s (%.1f MB/s)",
            name,
            rows,
            nbytes / 1e6,
            seconds,
            nbytes / 1e6 / max(seconds, 1e-6),
        )


def _eta(rows: int, total: int | None, elapsed: float) -> str:
    if not total or rows >= total or rows == 0:
        return ""
    return f", about {(total - rows) * elapsed / rows:.0f} s left"
