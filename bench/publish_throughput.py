"""Publish throughput: changed rows per second from the primary's log to Kafka.

With the agent stopped, a backlog is written into the log (many small pgbench-like
transactions, 4 changed rows each); then the agent is started and timed until the
whole backlog is published and recorded.

    .venv/bin/python -m bench.publish_throughput [--transactions 50000]
"""

from __future__ import annotations

import argparse
import time

from agent import capture, logtables
from bench.common import bench_stack, peak_rss_mb, pgbench_database, wait_for_ready, write_result
from devstack import processes
from devstack.demo import daemon_argv, reset_streams, start_daemon, write_config
from pgfanout.cli.status import source_position
from pgfanout.core.config import parse_config
from pgfanout.runtime.pg import connect

TABLES = ["public.pgbench_accounts", "public.pgbench_tellers", "public.pgbench_branches", "public.pgbench_history"]
SMALL_TRANSACTIONS = """
DO $$
BEGIN
  FOR i IN 1..%(count)s LOOP
    UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1 + (i * 7919) %% 1000000;
    UPDATE pgbench_tellers SET tbalance = tbalance + 1 WHERE tid = 1 + i %% 100;
    UPDATE pgbench_branches SET bbalance = bbalance + 1 WHERE bid = 1 + i %% 10;
    INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1 + i %% 100, 1 + i %% 10, i, 1, now());
    COMMIT;
  END LOOP;
END $$
"""


def prepare_pgbench_db(stack, db: str) -> dict:
    primary = stack.postgres("primary")
    pgbench_database(primary, db)
    data = {
        "kafka": {"local": {"bootstrap_servers": [stack.kafka("main").bootstrap]}},
        "sources": {db: {"dsn": primary.dsn(db), "kafka": "local", "tables": TABLES}},
    }
    reset_streams(parse_config(data))
    return data


def drain(stack, data: dict, db: str, expected_position: int) -> tuple[float, float, float]:
    """(seconds from process start, seconds from the agent's "ready", peak RSS in MB) to publish the backlog."""
    config_path = write_config(stack.home / f"{db}.yaml", data)
    config = parse_config(data)
    log_file = stack.log_dir / f"{db}-agent.log"
    log_file.unlink(missing_ok=True)
    started = time.perf_counter()
    pid = start_daemon(stack, f"{db}-agent", daemon_argv(config_path, "agent", "run", "--source", db))
    wait_for_ready(log_file)
    ready = time.perf_counter()
    with connect(config.sources[db], "bench") as conn:
        while source_position(conn)[0] < expected_position:
            time.sleep(0.01)
    done = time.perf_counter()
    peak = peak_rss_mb(pid)
    processes.stop(pid)
    return done - started, done - ready, peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transactions", type=int, default=50_000)
    args = parser.parse_args()
    stack = bench_stack()
    db = "bench_publish"
    data = prepare_pgbench_db(stack, db)
    config = parse_config(data)
    with connect(config.sources[db], "bench") as conn:
        capture.install(conn, config.sources[db])
        conn.execute(SMALL_TRANSACTIONS % {"count": args.transactions})
        rows = logtables.unpublished_count(conn)
    total, working, peak = drain(stack, data, db, args.transactions)
    small = {
        "transactions": args.transactions,
        "changed_rows": rows,
        "seconds_after_ready": round(working, 2),
        "rows_per_second": round(rows / working),
        "transactions_per_second": round(args.transactions / working),
        "seconds_including_startup": round(total, 2),
        "rows_per_second_including_startup": round(rows / total),
        "agent_peak_rss_mb": round(peak),
    }

    with connect(config.sources[db], "bench") as conn:
        conn.execute("UPDATE pgbench_accounts SET abalance = abalance + 1")  # one transaction, 1,000,000 rows
        rows = logtables.unpublished_count(conn)
    total, working, peak = drain(stack, data, db, args.transactions + 1)
    big = {
        "transactions": 1,
        "changed_rows": rows,
        "seconds_after_ready": round(working, 2),
        "rows_per_second": round(rows / working),
        "seconds_including_startup": round(total, 2),
        "agent_peak_rss_mb": round(peak),
    }
    write_result(
        "publish_throughput",
        {"many_small_transactions": small, "one_large_transaction": big},
        notes=(
            "backlog written with the agent stopped, then drained: from the agent's 'ready' log line (connected, "
            "reconciled) until the primary records the last position published; target >= 65,000 rows/s"
        ),
    )


if __name__ == "__main__":
    main()
