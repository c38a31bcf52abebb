"""`pgfanout compare` and `pgfanout repair`: the report, the progress bar and the exit status.

Exit status: 0 every table equal (after the repair, for a repair), 1 a table differs, 2 no verdict
(bad input, or the subscriber did not reach the compare's position in time): a script that checks
replicas never mistakes a compare that could not be made for a difference.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from tqdm import tqdm

from pgfanout.core.config import Config
from subscriber import compare as comparing
from subscriber.diff import TableReport


def _progress(tables: int, quiet: bool) -> tuple[Any, Any]:
    """A bar over the tables (each counts a summary step and a row step), on terminals only."""
    bar = tqdm(total=tables * 2, unit="step", desc="compare", disable=quiet or not sys.stderr.isatty(), leave=False)

    def step(table: str, done: int) -> None:
        bar.set_postfix_str(table)
        bar.update(done)

    return bar, step


def _print(reports: list[TableReport], targets: list[comparing.Target], position: int, as_json: bool) -> None:
    keys = {t.name: t.keys for t in targets}
    if as_json:
        print(json.dumps({"position": position, "tables": [r.as_json(keys[r.table]) for r in reports]}, indent=2))
        return
    for report in reports:
        print("\n".join(report.lines(keys[report.table])))


def run(
    config: Config, subscriber: str, tables: list[str] | None, timeout: float, examples: int, as_json: bool, repair: bool
) -> int:
    found = comparing.targets(config, subscriber, tables)
    bar, step = _progress(len(found), as_json)
    with bar:
        result = comparing.compare(config, subscriber, found, timeout, examples, step, keep=repair)
    if not as_json:
        print(f"subscriber {subscriber} against its share of the primary, both at position {result.position}:")
    _print(result.reports, found, result.position, as_json and not repair)
    if all(r.equal for r in result.reports):
        return 0
    if not repair:
        return 1
    for report in result.reports:
        if sum(report.counts.values()) > comparing.MAX_REPAIR_KEYS:
            print(
                f"{report.table}: more than {comparing.MAX_REPAIR_KEYS} rows differ; the repair makes the first "
                f"{comparing.MAX_REPAIR_KEYS} equal (run it again, or copy the table again: "
                f"pgfanout subscriber resync {subscriber} --table {report.table})",
                file=sys.stderr,
            )
    changed = comparing.repair(config, subscriber, found, result.differences, timeout)
    for table, rows in changed.items():
        plural = "" if rows == 1 else "s"
        print(f"repaired {table}: {rows} row{plural} made equal to the primary's", file=sys.stderr if as_json else sys.stdout)
    bar, step = _progress(len(found), as_json)
    with bar:
        again = comparing.compare(config, subscriber, found, timeout, examples, step)
    if not as_json:
        print(f"after the repair, both at position {again.position}:")
    _print(again.reports, found, again.position, as_json)
    return 0 if all(r.equal for r in again.reports) else 1
