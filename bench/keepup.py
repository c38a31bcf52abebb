"""Keeping up: pgbench at full rate with the whole pipeline running, then how long until the replica is drained.

Issue bar: the subscriber keeps up with the primary's full pgbench rate, drained < 1 s after the load stops
(native logical replication and Slony-I kept up with pgbench's ~3,200 tx/s at -c 4 on such a machine;
Bucardo did not).

    .venv/bin/python -m bench.keepup [--duration 30]
"""

from __future__ import annotations

import argparse
import time

from bench.common import bench_stack, pgbench, tps_of, write_result
from bench.lag import BenchPipeline
from pgfanout.cli.status import source_position, subscriber_position
from pgfanout.runtime.pg import connect


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=30)
    args = parser.parse_args()
    stack = bench_stack()
    name = "bench_keepup"
    pipeline = BenchPipeline(stack, name)
    config, sub = pipeline.config, pipeline.subscriber
    pipeline.start("agent", "distributor", "subscriber")
    time.sleep(3)
    output = pgbench("-c", "4", "-j", "2", "-T", str(args.duration), "-n", dsn_port=stack.postgres("primary").port, db=name)
    stopped = time.perf_counter()
    with connect(config.sources[name], "bench") as source, connect(config.subscribers[sub], "bench") as replica:
        behind_at_stop = source_position(source)[0] - subscriber_position(replica, sub)[0]
        while source_position(source)[2] > 0:  # the agent publishes what is still in the log
            time.sleep(0.005)
        target = source_position(source)[0]
        while subscriber_position(replica, sub)[0] < target:
            time.sleep(0.005)
    drained = time.perf_counter() - stopped
    pipeline.stop()
    write_result(
        "keepup",
        {
            "pgbench_tps": round(tps_of(output)),
            "duration_s": args.duration,
            "transactions": target,
            "behind_when_load_stopped": behind_at_stop,
            "drained_seconds_after_load_stopped": round(drained, 2),
        },
        notes="pgbench -c 4 -j 2 -n at full rate, TPC-B-like; agent, distributor, subscriber, Kafka and both "
        "PostgreSQL clusters on the same 2 cores; target: drained < 1 s after the load stops",
    )


if __name__ == "__main__":
    main()
