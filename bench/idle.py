"""Idle cost: the CPU a running pipeline uses when nothing is written.

An agent, a distributor and a subscriber run against a pgbench database on the local stack; once they
are ready and a few seconds have passed, the CPU time of each daemon (all its threads), of its PostgreSQL
backend, and of the Kafka broker is read from /proc over ``--seconds``. Reported in percent of one core.
PostgreSQL's native replication idles near 0; the target is under 0.5% of a core per daemon.

    .venv/bin/python -m bench.idle [--seconds 60]
"""

from __future__ import annotations

import argparse
import time

import psycopg

from bench.common import CpuAccount, bench_stack, write_result
from bench.lag import BenchPipeline
from devstack.demo import wait_caught_up

SETTLE_SECONDS = 10


def backends(dsn: str, application: str) -> list[int]:
    """The PostgreSQL backends serving a pgfanout daemon (by application_name)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s", (application,))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    stack = bench_stack()
    pipeline = BenchPipeline(stack, "idle")
    try:
        pipeline.start("agent", "distributor", "subscriber")
        wait_caught_up(pipeline.config, 120)
        time.sleep(SETTLE_SECONDS)
        primary, replica = stack.postgres("primary").dsn("idle"), stack.postgres("replica").dsn("idle")
        processes = {
            "agent": [pipeline.pids["agent"]],
            "distributor": [pipeline.pids[d] for d in pipeline.config.distributors],
            "subscriber": [pipeline.pids["subscriber"]],
            "agent's PostgreSQL backend": backends(primary, "pgfanout-agent-%"),
            "subscriber's PostgreSQL backend": backends(replica, "pgfanout-subscriber-%"),
            "Kafka broker": [stack.kafka("main").pid()],
        }
        with CpuAccount(processes) as account:
            time.sleep(args.seconds)
        percent = {name: round(100 * seconds / args.seconds, 2) for name, seconds in account.seconds.items()}
    finally:
        pipeline.stop()
    daemons = ("agent", "distributor", "subscriber")
    figures = {
        "seconds": args.seconds,
        "percent_of_a_core": percent,
        "worst_daemon_percent": max(percent[name] for name in daemons),
        "target_percent_per_daemon": 0.5,
    }
    write_result("idle", figures, notes="CPU of an idle pipeline (no writes), percent of one core, from /proc")


if __name__ == "__main__":
    main()
