"""``python -m bench.chaos --minutes N``: the chaos run on a stack of its own (.pgfanout-chaos), its table
printed and written to bench/results/chaos.json (and chaos.md). Exit status 1 when a guarantee broke."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict

from bench.chaos.run import Settings, per_kind_for, run_chaos
from bench.common import REPO, RESULTS, machine
from devstack.stack import Stack

CHAOS_HOME = REPO / ".pgfanout-chaos"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long faults are injected (default 10)")
    parser.add_argument("--per-kind", type=int, help="faults of each kind (default: as many as the minutes hold)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", default="chaos", help="the result's name under bench/results/")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    stack = Stack.load(CHAOS_HOME)
    stack.up(kafka_clusters=2)
    settings = Settings(args.minutes, args.per_kind or per_kind_for(args.minutes), args.seed)
    try:
        account = run_chaos(stack, settings)
    finally:
        stack.down(purge=os.environ.get("PGFANOUT_KEEP_CHAOS_STACK") != "1")
    table = account.table()
    print(table)
    for problem in account.problems()[:50]:
        print("PROBLEM:", problem)
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "chaos",
        "command": "python -m bench.chaos " + " ".join(argv if argv is not None else sys.argv[1:]),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "settings": asdict(settings),
        "seconds": account.seconds,
        "clean": account.clean,
        "faults_by_kind": account.rows(),
        "faults": [asdict(f) for f in account.faults],
        "samples": account.samples,
        "transactions": account.transactions,
        "violations": account.violations,
        "lost": account.lost,
        "duplicated": account.duplicated,
        "unequal": account.unequal,
        "stopped_by_themselves": account.stopped_by_themselves,
    }
    (RESULTS / f"{args.output}.json").write_text(json.dumps(record, indent=2) + "\n")
    (RESULTS / f"{args.output}.md").write_text(f"`{record['command']}` ({record['when']}, {account.seconds} s)\n\n{table}\n")
    return 0 if account.clean else 1


if __name__ == "__main__":
    sys.exit(main())
