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
from subscriber import repair as repairing


def _progress(rows: int, quiet: bool) -> tuple[Any, Any]:
    """A bar over the primary's estimated rows of the tables compared, on terminals only."""
    bar = tqdm(total=rows, unit="row", unit_scale=True, desc="compare", disable=quiet or not sys.stderr.isatty(), leave=False)

    def step(table: str, done: int) -> None:
        bar.set_postfix_str(table)
        bar.update(done)

    return bar, step


def _where(positions: list[int]) -> str:
    if len(positions) == 1:
        return f"both at position {positions[0]}"
    return f"both sides of each key range at one position, positions {positions[0]} to {positions[-1]}"


def _compare(config: Config, subscriber: str, found: list[comparing.Target], args: dict, keep: bool) -> comparing.Comparison:
    bar, step = _progress(comparing.estimated_rows(config, subscriber, found), args["as_json"])
    with bar:
        return comparing.compare(config, subscriber, found, args["timeout"], args["examples"], step, keep=keep, pace=args["pace"])


def _print(result: comparing.Comparison, found: list[comparing.Target], as_json: bool, title: str) -> None:
    keys = {t.name: t.keys for t in found}
    if as_json:
        tables = [r.as_json(keys[r.table]) for r in result.reports]
        print(json.dumps({"positions": [result.positions[0], result.positions[-1]], "tables": tables}, indent=2))
        return
    print(f"{title}, {_where(result.positions)}:")
    for report in result.reports:
        print("\n".join(report.lines(keys[report.table])))


def run(
    config: Config,
    subscriber: str,
    tables: list[str] | None,
    timeout: float,
    examples: int,
    as_json: bool,
    repair: bool,
    pace: float = 1.0,
) -> int:
    args = {"timeout": timeout, "examples": examples, "as_json": as_json, "pace": pace}
    found = comparing.targets(config, subscriber, tables)
    result = _compare(config, subscriber, found, args, keep=repair)
    if not (repair and as_json):  # a repair's JSON is the compare after it
        _print(result, found, as_json, f"subscriber {subscriber} against its share of the primary")
    if all(r.equal for r in result.reports):
        return 0
    if not repair:
        return 1
    notes = sys.stderr if as_json else sys.stdout
    for report in result.reports:
        if sum(report.counts.values()) > comparing.MAX_REPAIR_KEYS:
            print(
                f"{report.table}: more than {comparing.MAX_REPAIR_KEYS} rows differ; the repair makes the first "
                f"{comparing.MAX_REPAIR_KEYS} equal (run it again, or copy the table again: "
                f"pgfanout subscriber resync {subscriber} --table {report.table})",
                file=notes,
            )
    for table, rows in repairing.repair(config, subscriber, found, result.differences, timeout).items():
        print(f"repaired {table}: {rows} row{'' if rows == 1 else 's'} made equal to the primary's", file=notes)
    again = _compare(config, subscriber, found, args, keep=False)
    _print(again, found, as_json, "after the repair")
    return 0 if all(r.equal for r in again.reports) else 1
