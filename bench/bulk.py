"""A 1,000,000-row UPDATE: applied by the subscriber from a backlog, and replicated end to end.

pgbench scale 10 on the primary and the replica. `UPDATE pgbench_accounts SET abalance = abalance + 1`
touches every one of the 1,000,000 rows in one transaction.

- apply: the subscriber is stopped while the agent and a distributor put the transaction into the
  route; then it is started and timed from its "ready" until the position is applied. Its peak RSS
  (VmHWM) is read from /proc when it is done.
- end to end: every daemon runs; timed from the primary's COMMIT until the replica has applied it.

Peers on a machine like this (issue 4/3): native ~100k rows/s, Slony-I 58-62k, Bucardo 7.2k. Target >= 65,000.

    .venv/bin/python -m bench.bulk [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import psycopg

from bench.common import bench_stack, peak_rss_mb, wait_for_ready, write_result
from bench.lag import BenchPipeline
from devstack.demo import wait_caught_up
from pgfanout.cli.status import source_position, subscriber_position
from pgfanout.runtime.pg import connect

UPDATE = "UPDATE pgbench_accounts SET abalance = abalance + 1"
ROWS = 1_000_000


def wait_applied(config, sub: str, target: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    with connect(config.subscribers[sub], "bench") as conn:
        while subscriber_position(conn, sub)[0] < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"subscriber did not reach position {target}")
            time.sleep(0.01)


def one_update(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(UPDATE)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    stack = bench_stack()
    name = "bench_bulk"
    pipeline = BenchPipeline(stack, name)
    config, sub = pipeline.config, pipeline.subscriber
    primary_dsn = stack.postgres("primary").dsn(name)
    log_file = stack.log_dir / f"{sub}.log"
    pipeline.start("agent", "distributor")
    apply_rates, rss = [], []
    for _ in range(args.rounds):
        one_update(primary_dsn)
        wait_caught_up(config.model_copy(update={"subscribers": {}}), timeout=300)
        with connect(config.sources[name], "bench") as conn:
            target = source_position(conn)[0]
        time.sleep(3)  # the distributor forwards it
        log_file.unlink(missing_ok=True)
        pipeline.start("subscriber")
        wait_for_ready(log_file)
        started = time.perf_counter()
        wait_applied(config, sub, target)
        apply_rates.append(round(ROWS / (time.perf_counter() - started)))
        rss.append(round(peak_rss_mb(pipeline.pids["subscriber"])))
        print(f"apply: {apply_rates[-1]} rows/s, subscriber peak RSS {rss[-1]} MB", flush=True)
        pipeline.stop()
        pipeline.pids.clear()
        pipeline.start("agent", "distributor")
    pipeline.start("subscriber")
    time.sleep(3)
    end_to_end = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        one_update(primary_dsn)
        wait_caught_up(config, timeout=300)  # the log holds the rows until published, then the replica applies
        end_to_end.append(round(ROWS / (time.perf_counter() - started)))
        print(f"end to end: {end_to_end[-1]} rows/s", flush=True)
    pipeline.stop()
    write_result(
        "bulk",
        {
            "rows": ROWS,
            "apply_rows_per_second": apply_rates,
            "subscriber_peak_rss_mb": rss,
            "end_to_end_rows_per_second": end_to_end,
            "median_apply_rows_per_second": round(statistics.median(apply_rates)),
            "median_end_to_end_rows_per_second": round(statistics.median(end_to_end)),
        },
        notes="one UPDATE of all 1,000,000 pgbench_accounts rows in one transaction. apply: from a backlog in the "
        "route, timed from the subscriber's ready; end to end: from the primary's COMMIT until every "
        "subscriber has applied it (agent, distributor, subscriber and both servers on these 2 cores).",
    )


if __name__ == "__main__":
    main()
