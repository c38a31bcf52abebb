"""Subscriber catch-up: pgbench transactions applied per second from a backlog on the route.

pgbench runs --transactions TPC-B-like transactions with the subscriber stopped (agent and distributor
running, so the backlog sits in the route topic); then the subscriber starts and is timed from its
"ready" until it has applied the last position. Peers: native logical replication 41k tx/s, Slony-I 22k,
Bucardo 11-12k; target >= 25,000 (stretch 41,000).

    .venv/bin/python -m bench.catchup [--transactions 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.common import bench_stack, pgbench, pgbench_database, wait_for_ready, write_result
from bench.lag import BenchPipeline
from devstack import processes
from devstack.demo import wait_caught_up
from pgfanout.cli.status import source_position, subscriber_position
from pgfanout.runtime.pg import connect


def profile_subscriber(config, sub: str, target: int) -> None:
    import cProfile
    import pstats

    from subscriber.subscriber import Subscriber

    worker = Subscriber(config, sub)
    worker.connect()
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    while worker.session.replica.applied.position < target:
        worker.work()
    profiler.disable()
    print(f"{target} transactions in {time.perf_counter() - started:.2f}s (profiled)")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(16)
    worker.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transactions", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="run the subscriber in this process under cProfile")
    args = parser.parse_args()
    stack = bench_stack()
    name = "bench_catchup"
    pipeline = BenchPipeline(stack, name)
    config = pipeline.config
    pipeline.start("agent", "distributor")
    pgbench("-c", "4", "-j", "2", "-t", str(args.transactions // 4), "-n", dsn_port=stack.postgres("primary").port, db=name)
    wait_caught_up(config.model_copy(update={"subscribers": {}}), timeout=300)
    with connect(config.sources[name], "bench") as conn:
        target = source_position(conn)[0]
    time.sleep(3)  # let the distributor forward the tail of the backlog
    sub = pipeline.subscriber
    if args.profile:
        profile_subscriber(config, sub, target)
        pipeline.stop()
        return
    rates = []
    for round_ in range(args.rounds):
        if round_:
            pgbench_database(stack.postgres("replica"), name, probe=True)  # the same backlog again, onto a fresh replica
        seconds = time_catchup(stack, pipeline, config, sub, target)
        rates.append(round(target / seconds))
        print(f"round {round_ + 1}: {target} transactions in {seconds:.2f} s = {target / seconds:.0f} tx/s", flush=True)
    pipeline.stop()
    median = statistics.median(rates)
    write_result(
        "catchup",
        {
            "transactions": target,
            "changed_rows": target * 4,
            "rounds": rates,
            "transactions_per_second": round(median),
            "rows_per_second": round(median * 4),
        },
        notes="pgbench TPC-B-like transactions (4 changed rows each: 3 updates, 1 insert) plus a probe row "
        "insert per transaction from bench.lag's schema; each round applies the same backlog onto a "
        "fresh replica, timed from the subscriber's 'ready'; the figure is the median round.",
    )


def time_catchup(stack, pipeline: BenchPipeline, config, sub: str, target: int) -> float:
    log_file = stack.log_dir / f"{sub}.log"
    log_file.unlink(missing_ok=True)
    pipeline.start("subscriber")
    wait_for_ready(log_file)
    started = time.perf_counter()
    with connect(config.subscribers[sub], "bench") as conn:
        while subscriber_position(conn, sub)[0] < target:
            time.sleep(0.01)
    seconds = time.perf_counter() - started
    processes.stop(pipeline.pids.pop("subscriber"))
    return seconds


if __name__ == "__main__":
    main()
